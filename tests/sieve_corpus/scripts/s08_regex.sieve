require ["regex", "fileinto", "variables"];
if header :regex "subject" "^\\[([a-z]+)\\] Patch ([0-9]+)/([0-9]+)" { fileinto "Rx-${1}-${2}-${3}"; }
elsif header :regex :comparator "i;ascii-casemap" "subject" "won [$]+" { fileinto "RxSpam"; }
elsif header :regex "subject" "^(Quarterly|Annual) report$" { fileinto "Rx-${1}"; }
