require ["vacation-seconds", "fileinto"];
if header :contains "subject" "report" { vacation :seconds 3600 :handle "h1" text:
I am away.
..still away.
.
;
}
fileinto "Done";
