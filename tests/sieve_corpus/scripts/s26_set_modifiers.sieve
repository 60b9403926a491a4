require ["variables", "fileinto"];
set :lower "a" "HeLLo";
set :upperfirst "b" "${a}";
set :length "c" "${b} world";
set :quotewildcard "d" "a*b?";
set :upper :lowerfirst "e" "abc";
if string :is "${a}-${b}-${c}-${d}-${e}" "hello-Hello-11-a\\*b\\?-aBC" { fileinto "Mods"; }
if string :matches "${d}" "a\\\\*b*" { fileinto "Quoted"; }
