require ["fileinto", "imap4flags"];
if address :domain :is "from" "example.com" {
  addflag "\\Flagged";
  fileinto "Boss";
}
