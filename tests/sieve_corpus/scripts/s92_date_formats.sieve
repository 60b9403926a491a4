require ["date", "variables", "fileinto"];
if date :originalzone :matches "date" "iso8601" "*" { set "iso" "${1}"; }
if date :zone "+0000" :matches "date" "std11" "*" { set "std" "${1}"; }
if date :originalzone :matches "date" "zone" "*" { set "zone" "${1}"; }
if date :zone "+0000" :matches "resent-date" "zone" "*" { set "rz" "${1}"; }
if date :originalzone :matches "resent-date" "zone" "*" { set "oz" "${1}"; }
if date :originalzone :matches "x-date-comment" "time" "*" { set "c" "${1}"; }
fileinto "I[${iso}]S[${std}]Z[${zone}]R[${rz}]O[${oz}]C[${c}]";
