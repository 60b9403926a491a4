require ["imap4flags", "fileinto", "variables", "relational", "comparator-i;ascii-numeric"];
setflag "$Work \\Flagged";
if hasflag :matches "$w*" { fileinto "W"; }
if hasflag :is "\\flagged" { fileinto "F"; }
if hasflag :count "eq" :comparator "i;ascii-numeric" "2" { fileinto "Two"; }
removeflag ["$Work", "\\Flagged"];
if not hasflag :contains "" { fileinto "NoneLeft"; }
