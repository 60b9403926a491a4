require ["vacation"];
vacation :days 3 :subject "Out of office" :from "me@example.org" :addresses ["me@example.org"] "I am away until Monday.";
