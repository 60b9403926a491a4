require ["fileinto"];
if header :is "subject" "You WON $$$ *** claim now ***" { fileinto "Is\"Quoted\""; }
if header :matches "subject" "You WON \\$\\$\\$ \\*\\*\\* *" { fileinto "EscapedStars"; }
