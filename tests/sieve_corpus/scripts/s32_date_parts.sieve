require ["date", "relational", "fileinto", "variables"];
if date :zone "+0000" :matches "date" "weekday" "*" { set "wd" "${1}"; }
if date :zone "+0000" :matches "date" "julian" "*" { set "j" "${1}"; }
if date :zone "+0000" :matches "date" "time" "*" { set "t" "${1}"; }
if date :zone "+0000" :matches "date" "std11" "*" { set "s" "${1}"; }
fileinto "W${wd}-J${j}";
if date :zone "+0000" :is "date" "time" "08:30:00" { fileinto "T0830"; }
if date :zone "+0000" :contains "date" "std11" "Dec 2026" { fileinto "Std11"; }
