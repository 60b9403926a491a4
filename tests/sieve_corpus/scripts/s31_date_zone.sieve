require ["date", "relational", "fileinto"];
if date :zone "+0000" :is "date" "year" "2027" { fileinto "UTC2027"; }
if date :originalzone :is "date" "year" "2026" { fileinto "Orig2026"; }
if date :zone "+0100" :is "date" "date" "2026-12-01" { fileinto "Paris1Dec"; }
if date :zone "-0800" :value "ge" "date" "hour" "09" { fileinto "LateWest"; }
if date :originalzone :is "date" "zone" "-0800" { fileinto "ZoneWest"; }
