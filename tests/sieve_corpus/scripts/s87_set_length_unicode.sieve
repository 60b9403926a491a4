require ["variables", "fileinto"];
if header :matches "subject" "*" { set :length "n" "${1}"; }
set :upper "u" "été";
set :upperfirst "f" "été";
fileinto "N${n}-${u}-${f}";
