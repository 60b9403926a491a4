require ["include", "variables"];
global "folder";
if header :contains "subject" "patch" { set "folder" "GlobalPatch"; return; }
set "folder" "GlobalOther";
