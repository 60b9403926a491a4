require ["envelope", "subaddress", "fileinto", "variables"];
if envelope :detail "to" "*" { set "d" "${1}"; }
if envelope :detail :is "to" "work" { fileinto "Work"; }
elsif envelope :detail :matches "to" "*" { fileinto "Detail-${d}"; }
