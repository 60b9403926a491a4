require ["fileinto"];
fileinto "Dup";
fileinto "Dup";
keep;
fileinto "INBOX";
