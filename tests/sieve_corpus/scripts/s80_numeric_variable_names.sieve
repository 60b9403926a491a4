require ["fileinto", "variables"];
if header :matches "from" "*@*" { set "u" "${01}"; }
if header :matches "subject" "zzz*" { set "u" "failed"; }
fileinto "U-${u}-${2}";
