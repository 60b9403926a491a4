require ["fileinto", "relational", "comparator-i;ascii-numeric", "variables"];
if address :count "eq" :comparator "i;ascii-numeric" "to" "0" { fileinto "NoTo"; }
if address :count "eq" :comparator "i;ascii-numeric" "cc" "2" { fileinto "TwoCc"; }
if header :contains "cc" "Jürgen" { fileinto "Juergen"; }
if address :domain :is "cc" "example.de" { fileinto "De"; }
if header :contains "to" "undisclosed" { fileinto "Undisclosed"; }
