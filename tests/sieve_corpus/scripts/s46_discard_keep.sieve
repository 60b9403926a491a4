if header :contains "subject" "WON" { discard; stop; }
keep;
discard;
