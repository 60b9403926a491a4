require ["fileinto"];
if header :matches :comparator "i;octet" "subject" "disk*" { fileinto "OctetLower"; }
if header :matches :comparator "i;octet" "subject" "DISK*" { fileinto "OctetUpper"; }
if header :matches "subject" "DISK*PERCENT" { fileinto "Casemap"; }
if header :matches "subject" "*" { fileinto "Star"; }
if header :matches "x-empty" "*" { fileinto "EmptyStar"; }
if header :matches "x-empty" "?*" { fileinto "EmptyQ"; }
