require ["fileinto", "regex", "variables"];
if header :regex "subject" "^.t. sale" { fileinto "DotIsChar"; }
if header :regex "subject" "^..t.. sale" { fileinto "DotIsOctet"; }
if header :contains "subject" "ÉTÉ" { fileinto "NonAsciiFolded"; }
if header :contains "subject" "été SALE" { fileinto "AsciiFolded"; }
if header :regex "subject" "(ÉTÉ|été)" { fileinto "RxCase"; }
if header :regex "subject" "[[:upper:]]" { fileinto "Upper"; }
