require ["fileinto", "variables"];
if header :matches "subject" "[*] Patch ?/?: *" { fileinto "P${2}of${3}-${1}"; }
if header :matches "subject" "*\\*\\*\\**" { fileinto "Stars"; }
if header :matches "subject" "*\\$*" { fileinto "Dollar"; }
if header :matches "subject" "?????" { fileinto "Five"; }
