require ["index", "fileinto"];
if header :index 0 :contains "received" "x" { fileinto "Zero"; }
