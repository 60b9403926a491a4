require ["imap4flags", "fileinto"];
setflag "\\Seen";
addflag ["$Work", "\\Flagged"];
removeflag "\\Seen";
if hasflag :contains "work" { addflag "$HasWork"; }
if header :contains "subject" "report" { fileinto "Flagged"; }
