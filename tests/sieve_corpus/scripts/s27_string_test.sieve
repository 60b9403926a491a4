require ["variables", "fileinto", "relational", "comparator-i;ascii-numeric"];
if header :matches "x-disk" "*" { set "disk" "${1}"; }
if string :value "gt" :comparator "i;ascii-numeric" "${disk}" "80" { fileinto "Full"; }
if string :count "eq" :comparator "i;ascii-numeric" ["${disk}", "", "x"] "2" { fileinto "CountNonEmpty"; }
if string :is "${undefined}" "" { fileinto "Undefined"; }
