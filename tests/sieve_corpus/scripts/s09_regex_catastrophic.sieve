require ["regex", "fileinto"];
if header :regex "subject" "^(a+)+$" { fileinto "Bad"; }
if header :regex "x-long" "^(ab|a|b)*c$" { fileinto "Bad2"; }
if header :regex "subject" "^a+!$" { fileinto "Linear"; }
