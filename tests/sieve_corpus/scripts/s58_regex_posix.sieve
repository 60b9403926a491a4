require ["regex", "fileinto", "variables"];
if header :regex "subject" "([[:digit:]]+) percent$" { fileinto "Pct${1}"; }
if header :regex "from" "^[a-z]+@example\\.(org|com)$" { fileinto "Rx${1}"; }
if header :regex "x-level" "^0+([1-9][0-9]*)$" { fileinto "Lvl${1}"; }
if header :regex :comparator "i;octet" "subject" "^DISK" { fileinto "RxOctetUpper"; }
