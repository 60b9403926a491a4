require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :count "ge" :comparator "i;ascii-numeric" "received" "3" { fileinto "ManyHops"; }
if address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] "3" { fileinto "Three"; }
if header :count "eq" :comparator "i;ascii-numeric" "x-count" "2" { fileinto "TwoCounts"; }
