require ["fileinto", "variables"];
if header :matches "subject" "* on *.*" { fileinto "G-${2}-${3}"; }
if header :matches "subject" "?t?*" { fileinto "Q-${1}${2}"; }
if header :matches "subject" "nomatch*" { fileinto "Never"; }
fileinto "Keep-${1}";
