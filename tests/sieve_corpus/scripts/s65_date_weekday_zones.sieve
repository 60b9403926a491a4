require ["date", "relational", "fileinto", "variables"];
if date :zone "+1400" :matches "date" "weekday" "*" { set "a" "${1}"; }
if date :zone "-1200" :matches "date" "weekday" "*" { set "b" "${1}"; }
if date :zone "+0530" :matches "date" "time" "*" { set "c" "${1}"; }
if date :zone "+0530" :matches "date" "zone" "*" { set "z" "${1}"; }
fileinto "D${a}-${b}-${c}-${z}";
