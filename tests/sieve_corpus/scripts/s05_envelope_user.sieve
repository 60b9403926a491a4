require ["envelope", "subaddress", "fileinto"];
if envelope :user :is "to" "me" { fileinto "Mine"; }
if envelope :localpart :is "from" "andre+news" { fileinto "Andre"; }
if address :user :is "from" "andre" { fileinto "AndreUser"; }
if address :detail :is "from" "news" { fileinto "AndreNews"; }
