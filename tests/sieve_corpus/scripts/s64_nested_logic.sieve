require ["fileinto", "imap4flags"];
if allof (anyof (header :contains "subject" "report", header :contains "subject" "patch"),
          not allof (exists "list-id", address :domain "from" "example.net")) {
  if header :contains "subject" "report" { setflag "$Report"; }
  fileinto "Work";
} elsif anyof (exists "list-id") {
  fileinto "Lists";
} else {
  keep;
}
