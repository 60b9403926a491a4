require "fileinto";
if header :contains "subject" "never" { fileinto "Never"; }
elsif header :contains "subject" "report" { fileinto "Report"; stop; }
elsif header :contains "subject" "patch" { fileinto "Patch"; }
else { fileinto "Other"; }
fileinto "AfterIf";
