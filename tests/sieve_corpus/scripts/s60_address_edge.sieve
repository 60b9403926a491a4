require ["fileinto", "relational", "comparator-i;ascii-numeric", "variables"];
if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] "2" { fileinto "TwoPlus"; }
if address :is :all "cc" "OTHER@EXAMPLE.NET" { fileinto "CcCase"; }
if address :localpart :matches "cc" "*" { fileinto "Cc-${1}"; }
if header :contains "cc" "Other, Person" { fileinto "CcDisplay"; }
