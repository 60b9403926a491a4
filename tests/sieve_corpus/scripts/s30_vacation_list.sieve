require ["vacation", "fileinto"];
if header :contains "subject" "patch" { fileinto "Lists"; }
vacation "Away (lists should not get this).";
