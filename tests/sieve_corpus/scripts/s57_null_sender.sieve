require ["envelope", "fileinto", "subaddress"];
if envelope :all :is "from" "" { fileinto "NullAll"; }
if envelope :localpart :is "from" "" { fileinto "NullLocal"; }
if envelope :domain :is "from" "" { fileinto "NullDomain"; }
if envelope :detail :is "to" "alerts" { fileinto "Alerts"; }
if envelope :detail :is "to" "" { fileinto "EmptyDetail"; }
