require ["date", "index", "relational", "fileinto"];
if date :index 1 :zone "+0000" :is "received" "hour" "03" { fileinto "Rcvd03"; }
if date :index 1 :last :zone "+0000" :is "date" "minute" "57" { fileinto "LastDate57"; }
