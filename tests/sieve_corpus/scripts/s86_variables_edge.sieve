require ["variables", "fileinto"];
set "a" "x";
set "A" "${a}y";
set "empty" "";
set "b" "${a}${unknown}${A}-${em${empty}pty}-$${a}-${ a }";
fileinto "V-${b}";
