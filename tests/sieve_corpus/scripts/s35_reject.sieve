require "reject";
if header :contains "subject" "WON" { reject "No spam, thank you."; }
