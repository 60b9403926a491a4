require "fileinto";
# subject substring, default comparator i;ascii-casemap
if header :contains "subject" "REPORT" { fileinto "Reports"; }
elsif header :contains ["subject", "list-id"] "dev.lists" { fileinto "Dev"; }
