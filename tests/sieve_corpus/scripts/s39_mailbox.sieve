require ["mailbox", "fileinto"];
if mailboxexists "Existing" { fileinto "Existing"; }
if mailboxexists "Missing" { fileinto "WrongMissing"; }
fileinto :create "Created";
