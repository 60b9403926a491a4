require ["imap4flags", "fileinto"];
fileinto :flags "$A" "X";
fileinto :flags "$B" "X";
keep :flags "$C";
fileinto :flags "$D" "INBOX";
