require ["fileinto", "variables"];
set "x" text:
Multi
.
;
if string :is "${x}" "Multi\r\n" { fileinto "MultiLine"; }
