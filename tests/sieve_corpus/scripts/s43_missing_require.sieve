if header :contains "subject" "report" { fileinto "NoRequire"; }
