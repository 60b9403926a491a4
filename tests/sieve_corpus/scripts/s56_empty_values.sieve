require ["fileinto", "relational", "comparator-i;ascii-numeric"];
if header :is "x-empty" "" { fileinto "EmptyIs"; }
if exists "x-empty" { fileinto "EmptyExists"; }
if header :contains "x-absent" "" { fileinto "AbsentContains"; }
if not header :contains "x-absent" "" { fileinto "AbsentNot"; }
if header :count "eq" :comparator "i;ascii-numeric" "x-absent" "0" { fileinto "AbsentCount0"; }
if header :value "eq" :comparator "i;ascii-numeric" "x-absent" "" { fileinto "AbsentValue"; }
