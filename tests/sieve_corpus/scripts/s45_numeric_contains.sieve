require ["comparator-i;ascii-numeric"];
if header :contains :comparator "i;ascii-numeric" "x-disk" "8" { discard; }
