require ["index", "date", "fileinto"];
if header :index 2 :contains "received" "relay2" { fileinto "Second"; }
if header :index 1 :last :contains "received" "relay1" { fileinto "LastRelay1"; }
if header :index 2 :last :is "x-count" "10" { fileinto "XCount"; }
