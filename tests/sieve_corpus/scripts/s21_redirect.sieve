if header :contains "subject" "report" { redirect "assistant@example.org"; }
if header :contains "subject" "patch" { redirect "<dev-archive@example.org>"; redirect "dev-archive@example.org"; }
