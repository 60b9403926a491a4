require "fileinto";
if header :is :comparator "i;octet" "subject" "quarterly report" { fileinto "OctetLower"; }
if header :is :comparator "i;octet" "subject" "Quarterly report" { fileinto "OctetExact"; }
if header :is :comparator "i;ascii-casemap" "subject" "QUARTERLY REPORT" { fileinto "Casemap"; }
if header :contains :comparator "i;octet" "from" "BOSS" { fileinto "OctetContains"; }
