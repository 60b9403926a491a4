require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" { fileinto "Spam"; }
if header :value "gt" :comparator "i;ascii-numeric" "x-disk" "80" { fileinto "Disk"; }
if header :is :comparator "i;ascii-numeric" "x-level" "42" { fileinto "Level42"; }
if header :value "lt" :comparator "i;ascii-numeric" "subject" "5" { fileinto "Infinity"; }
