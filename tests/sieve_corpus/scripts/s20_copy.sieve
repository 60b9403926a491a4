require ["copy", "fileinto"];
fileinto :copy "Archive";
if header :contains "subject" "report" { redirect :copy "assistant@example.org"; }
