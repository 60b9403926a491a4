require ["encoded-character", "fileinto"];
if header :contains "subject" "${unicode:E9}union" { fileinto "Enc-${hex:41 42}"; }
if header :contains "subject" "Patch${hex: 20 33}" { fileinto "Enc-Patch"; }
