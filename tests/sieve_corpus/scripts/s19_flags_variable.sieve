require ["imap4flags", "fileinto", "variables", "relational", "comparator-i;ascii-numeric"];
set "mine" "";
addflag "mine" "$A $B";
removeflag "mine" "$A";
if hasflag "mine" "$B" { fileinto :flags "${mine}" "VarFlags"; }
if hasflag :count "ge" :comparator "i;ascii-numeric" "mine" "1" { setflag "$Counted"; }
