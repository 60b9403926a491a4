require ["imap4flags", "fileinto"];
fileinto :flags ["\\Seen", "$Label1"] "Read";
if header :contains "subject" "report" { keep :flags "\\Answered"; }
