require ["date", "relational", "fileinto"];
if currentdate :value "ge" "year" "2020" { fileinto "After2020"; }
if currentdate :zone "+0000" :value "lt" "year" "2000" { fileinto "Before2000"; }
