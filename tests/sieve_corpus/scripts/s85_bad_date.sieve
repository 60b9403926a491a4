require ["date", "fileinto", "relational"];
if date :originalzone :is "x-bad-date" "year" "2026" { fileinto "Bad"; }
if date :value "gt" "date" "year" "1900" { fileinto "HasDate"; }
if not date :is "x-absent" "year" "2026" { fileinto "Absent"; }
