require ["date", "variables", "fileinto"];
if date :originalzone :matches "date" "date" "*" { fileinto "D-${1}"; }
if date :zone "+0000" :matches "date" "time" "*" { fileinto "T-${1}"; }
