require /* inline */ "fileinto"; # hash comment
/* multi
   line comment */
if header :contains "subject" "report" /* here */ { fileinto "Commented"; }
